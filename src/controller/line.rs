//! The order EgressCheck reconciles take their turn in: a bounded number work at once, the
//! rest wait in line in the order they arrived, and changes people make have a lane of their
//! own. A check waiting in line costs a queue entry, not a running task: kube-runtime polls
//! every running reconcile on each wake-up, and its own limit takes waiting objects in hash
//! order, which starved some checks when the cluster fell behind.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;

use super::lock;
use super::trigger::CheckTrigger;

/// A check: (namespace, name).
pub type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    InLine,
    Change,
}

#[derive(Default)]
struct State {
    /// Turns not taken, per lane.
    free_in_line: usize,
    free_for_changes: usize,
    /// Checks waiting, in arrival order; changes have their own line, served first.
    in_line: VecDeque<Key>,
    changes: VecDeque<Key>,
    queued: HashSet<Key>,
    /// Checks whose turn came: the turn is kept for them until their reconcile arrives.
    called: HashMap<Key, (Lane, Instant)>,
}

/// Where a check whose turn came is sent: the controller of its namespace (or of all).
type Caller = (
    Option<String>,
    mpsc::UnboundedSender<ObjectRef<DeserializeGuard<CheckTrigger>>>,
);

pub struct Line {
    state: Mutex<State>,
    callers: Mutex<Vec<Caller>>,
}

/// A reconcile's turn; the next in line is called when it ends.
pub struct Turn {
    line: Arc<Line>,
    lane: Lane,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.line.release(self.lane);
    }
}

impl Line {
    /// `in_line` turns for everyone, and `for_changes` more that only changes take.
    pub fn new(in_line: usize, for_changes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free_in_line: in_line.max(1),
                free_for_changes: for_changes.max(1),
                ..State::default()
            }),
            callers: Mutex::default(),
        }
    }

    /// The checks of `namespace` (or of all) whose turn comes, to reconcile them again.
    pub fn calls(
        &self,
        namespace: Option<String>,
    ) -> mpsc::UnboundedReceiver<ObjectRef<DeserializeGuard<CheckTrigger>>> {
        let (tx, rx) = mpsc::unbounded();
        lock(&self.callers).push((namespace, tx));
        rx
    }

    /// The check's turn if it has one now. Otherwise it waits in line (once, however often it
    /// asks) and is called through [`Line::calls`] when its turn comes.
    pub fn admit(self: &Arc<Self>, key: &Key, change: bool) -> Option<Turn> {
        let turn = |lane| Turn {
            line: self.clone(),
            lane,
        };
        let mut state = lock(&self.state);
        if let Some((lane, _)) = state.called.remove(key) {
            return Some(turn(lane));
        }
        if state.queued.contains(key) {
            if change {
                drop(state);
                self.expedite(key);
            }
            return None;
        }
        if change && state.free_for_changes > 0 && state.changes.is_empty() {
            state.free_for_changes -= 1;
            return Some(turn(Lane::Change));
        }
        let nobody_ahead = state.in_line.is_empty() && state.changes.is_empty();
        if state.free_in_line > 0 && nobody_ahead {
            state.free_in_line -= 1;
            return Some(turn(Lane::InLine));
        }
        state.queued.insert(key.clone());
        if change {
            state.changes.push_back(key.clone());
        } else {
            state.in_line.push_back(key.clone());
        }
        None
    }

    /// A check waiting in line changed: it moves to the change lane, and is called at once if
    /// that has a turn free.
    pub fn expedite(&self, key: &Key) {
        let mut state = lock(&self.state);
        let Some(at) = state.in_line.iter().position(|k| k == key) else {
            return;
        };
        state.in_line.remove(at);
        if state.free_for_changes > 0 && state.changes.is_empty() {
            state.free_for_changes -= 1;
            state.queued.remove(key);
            state
                .called
                .insert(key.clone(), (Lane::Change, Instant::now()));
            drop(state);
            self.call(key);
        } else {
            state.changes.push_back(key.clone());
        }
    }

    /// A turn ended: it goes to the first change waiting, else (a turn in line) to the first
    /// in line.
    fn release(&self, lane: Lane) {
        let mut state = lock(&self.state);
        let next = match state.changes.pop_front() {
            Some(key) => Some(key),
            None if lane == Lane::InLine => state.in_line.pop_front(),
            None => None,
        };
        let Some(key) = next else {
            match lane {
                Lane::InLine => state.free_in_line += 1,
                Lane::Change => state.free_for_changes += 1,
            }
            return;
        };
        state.queued.remove(&key);
        state.called.insert(key.clone(), (lane, Instant::now()));
        drop(state);
        self.call(&key);
    }

    fn call(&self, key: &Key) {
        let object = ObjectRef::new(&key.1).within(&key.0);
        lock(&self.callers).retain(|(scope, tx)| {
            let concerned = scope.as_ref().is_none_or(|s| *s == key.0);
            // A caller whose controller has stopped goes.
            !concerned || tx.unbounded_send(object.clone()).is_ok()
        });
    }

    /// A check that is gone: its place in line, and a turn kept for it, go to the next.
    pub fn forget(&self, key: &Key) {
        let mut state = lock(&self.state);
        if state.queued.remove(key) {
            state.in_line.retain(|k| k != key);
            state.changes.retain(|k| k != key);
        }
        let called = state.called.remove(key);
        drop(state);
        if let Some((lane, _)) = called {
            self.release(lane);
        }
    }

    /// Turns kept longer than `grace` for a check whose reconcile did not come go to the next:
    /// a lost call must not keep a turn forever.
    pub fn reclaim(&self, grace: Duration) {
        let stale: Vec<Lane> = {
            let mut state = lock(&self.state);
            let mut stale = Vec::new();
            state.called.retain(|_, (lane, at)| {
                let keep = at.elapsed() < grace;
                if !keep {
                    stale.push(*lane);
                }
                keep
            });
            stale
        };
        for lane in stale {
            self.release(lane);
        }
    }

    /// Checks waiting for their turn.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.state).queued.len()
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn key(name: &str) -> Key {
        ("ns".to_owned(), name.to_owned())
    }

    fn called(
        calls: &mut mpsc::UnboundedReceiver<ObjectRef<DeserializeGuard<CheckTrigger>>>,
    ) -> Vec<String> {
        let mut names = Vec::new();
        while let Some(Some(object)) = calls.next().now_or_never() {
            names.push(object.name);
        }
        names
    }

    #[test]
    fn waiting_checks_are_called_in_the_order_they_arrived() {
        let line = Arc::new(Line::new(1, 1));
        let mut calls = line.calls(None);
        let first = line.admit(&key("first"), false).expect("a free turn");
        for i in 0..32 {
            assert!(line.admit(&key(&format!("c{i}")), false).is_none());
        }
        // Asking again does not queue twice or jump ahead.
        assert!(line.admit(&key("c5"), false).is_none());
        assert_eq!(line.waiting(), 32);
        let mut order = Vec::new();
        drop(first);
        while let Some(name) = called(&mut calls).pop() {
            // A newcomer does not take the turn kept for the one called.
            if name != "newcomer" {
                assert!(line.admit(&key("newcomer"), false).is_none());
            }
            let turn = line.admit(&key(&name), false).expect("its turn");
            order.push(name);
            drop(turn);
        }
        let mut expected: Vec<String> = (0..32).map(|i| format!("c{i}")).collect();
        expected.push("newcomer".into());
        assert_eq!(order, expected);
        assert_eq!(line.waiting(), 0);
    }

    #[test]
    fn changes_do_not_wait_behind_the_line() {
        let line = Arc::new(Line::new(1, 1));
        let mut calls = line.calls(Some("ns".into()));
        let periodic = line.admit(&key("periodic"), false).unwrap();
        assert!(line.admit(&key("a"), false).is_none());
        assert!(line.admit(&key("b"), false).is_none());
        // A new or edited check takes the change lane.
        let edited = line
            .admit(&key("edited"), true)
            .expect("the change lane is free");
        // "b" is edited while it waits: it moves to the change lane, first in it.
        line.expedite(&key("b"));
        assert!(called(&mut calls).is_empty(), "the change lane is taken");
        drop(edited);
        assert_eq!(called(&mut calls), ["b"]);
        let b = line.admit(&key("b"), false).unwrap();
        // A turn in line ends: "a" is next (the change waiting was served).
        drop(periodic);
        assert_eq!(called(&mut calls), ["a"]);
        drop(b);
        assert!(line.admit(&key("a"), false).is_some());
    }

    #[test]
    fn gone_checks_and_lost_calls_give_their_turn_away() {
        let line = Arc::new(Line::new(1, 1));
        let mut calls = line.calls(None);
        let held = line.admit(&key("held"), false).unwrap();
        for name in ["deleted", "lost", "next"] {
            assert!(line.admit(&key(name), false).is_none());
        }
        line.forget(&key("deleted"));
        drop(held);
        assert_eq!(called(&mut calls), ["lost"]);
        line.reclaim(Duration::from_secs(60));
        assert!(called(&mut calls).is_empty(), "still within its grace");
        line.reclaim(Duration::ZERO);
        assert_eq!(called(&mut calls), ["next"]);
        line.forget(&key("next"));
        assert!(
            line.admit(&key("later"), false).is_some(),
            "the turn came back"
        );
    }
}
