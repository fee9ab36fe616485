//! Fault injection: failing, delaying or holding matching requests, dropping every watch
//! stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// Which requests a rule applies to, and what it does to them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// get, list, watch, create, update, patch, delete, deletecollection; None: any.
    pub verb: Option<String>,
    /// Resource plural (`egresschecks`), optionally with a subresource (`egresschecks/status`).
    pub resource: Option<String>,
    /// How many matching requests it affects.
    pub count: usize,
    /// Answer with this HTTP status instead of serving the request.
    pub status: Option<u16>,
    /// Hold the answer this long first.
    #[serde(default)]
    pub delay_ms: u64,
}

pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
    holds: Mutex<Vec<(String, String, Arc<Hold>)>>,
    watch_epoch: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            holds: Mutex::new(Vec::new()),
            watch_epoch: watch::channel(0).0,
        }
    }
}

/// A request stopped before it is served, until the test releases it: the way to put a
/// write of the test's own between a client's read and its write.
#[derive(Debug)]
pub struct Hold {
    arrived: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Hold {
    /// Waits until the held request has arrived.
    pub async fn arrived(&self) {
        let mut arrived = self.arrived.subscribe();
        let _ = arrived.wait_for(|a| *a).await;
    }

    /// Lets the held request be served.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Called by the server for the held request: announces it and waits for the release.
    pub async fn wait(&self) {
        self.arrived.send_replace(true);
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
}

/// What a request must suffer.
#[derive(Debug, Default)]
pub struct Verdict {
    pub status: Option<u16>,
    pub delay: Duration,
    /// Wait for the test's release before serving.
    pub hold: Option<Arc<Hold>>,
}

impl PartialEq for Verdict {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.delay == other.delay
            && self.hold.is_some() == other.hold.is_some()
    }
}

impl Faults {
    pub fn add(&self, rule: FaultRule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// Fails the next `count` requests of `verb` on `resource` with `status`.
    pub fn fail_next(&self, verb: &str, resource: &str, count: usize, status: u16) {
        self.add(FaultRule {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            count,
            status: Some(status),
            delay_ms: 0,
        });
    }

    /// How many of the requests `fail_next` or `delay_next` named for `verb` on `resource`
    /// have not come yet: the signal that a client has made the calls a test waits for.
    pub fn remaining(&self, verb: &str, resource: &str) -> usize {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.verb.as_deref() == Some(verb) && r.resource.as_deref() == Some(resource))
            .map(|r| r.count)
            .sum()
    }

    /// Delays the next `count` requests of `verb` on `resource`.
    pub fn delay_next(&self, verb: &str, resource: &str, count: usize, delay: Duration) {
        self.add(FaultRule {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            count,
            status: None,
            delay_ms: delay.as_millis() as u64,
        });
    }

    /// Holds the next request of `verb` on `resource` before it is served, until released.
    pub fn hold_next(&self, verb: &str, resource: &str) -> Arc<Hold> {
        let hold = Arc::new(Hold {
            arrived: watch::channel(false).0,
            released: watch::channel(false).0,
        });
        self.holds.lock().unwrap_or_else(|p| p.into_inner()).push((
            verb.into(),
            resource.into(),
            hold.clone(),
        ));
        hold
    }

    /// Ends every open watch stream (clients see the connection close, then resume).
    pub fn close_watches(&self) {
        self.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    pub fn watch_closures(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }

    pub fn check(&self, verb: &str, resource: &str) -> Verdict {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut verdict = Verdict::default();
        for rule in rules.iter_mut() {
            let verb_matches = rule.verb.as_deref().is_none_or(|v| v == verb);
            let resource_matches = rule.resource.as_deref().is_none_or(|r| r == resource);
            if rule.count > 0 && verb_matches && resource_matches {
                rule.count -= 1;
                verdict.status = verdict.status.or(rule.status);
                verdict.delay += Duration::from_millis(rule.delay_ms);
            }
        }
        rules.retain(|r| r.count > 0);
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = holds
            .iter()
            .position(|(v, r, _)| v == verb && r == resource)
        {
            verdict.hold = Some(holds.remove(at).2);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_fires_its_count_then_retires() {
        let faults = Faults::default();
        faults.fail_next("patch", "egresschecks/status", 2, 500);
        assert_eq!(
            faults.check("get", "egresschecks/status"),
            Verdict::default()
        );
        assert_eq!(
            faults.check("patch", "egresschecks/status").status,
            Some(500)
        );
        assert_eq!(
            faults.check("patch", "egresschecks/status").status,
            Some(500)
        );
        assert_eq!(faults.check("patch", "egresschecks/status").status, None);
    }
}
