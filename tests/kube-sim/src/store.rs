//! Object storage with a global resourceVersion, a bounded event history for watch resumption,
//! and a broadcast of every change to live watchers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    /// Resource key (`plural.group`).
    pub key: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Arc<Value>,
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events at or below this version are no longer kept: watching from there gets 410.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted: 1,
            tx,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn get(&self, key: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Objects of a type, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, key: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(objects) = self.objects.get(key) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => objects
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => objects.values().cloned().collect(),
        }
    }

    /// Every stored object with its type key.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Arc<Value>)> {
        self.objects
            .iter()
            .flat_map(|(key, m)| m.values().map(move |v| (key, v)))
    }

    /// Stores `object` (its resourceVersion set to a new version) and tells watchers.
    pub fn put(&mut self, key: &str, mut object: Value, kind: EventType) -> Arc<Value> {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let object = Arc::new(object);
        self.objects
            .entry(key.to_owned())
            .or_default()
            .insert((namespace.clone(), name), object.clone());
        self.record(key, namespace, kind, object.clone());
        object
    }

    /// Removes an object; watchers see it with a new resourceVersion.
    pub fn remove(&mut self, key: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let removed = self
            .objects
            .get_mut(key)
            .and_then(|m| m.remove(&(namespace.to_owned(), name.to_owned())))?;
        self.rv += 1;
        let mut last = (*removed).clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let last = Arc::new(last);
        self.record(key, namespace.to_owned(), EventType::Deleted, last.clone());
        Some(last)
    }

    fn record(&mut self, key: &str, namespace: String, kind: EventType, object: Arc<Value>) {
        let event = Arc::new(Event {
            rv: self.rv,
            key: key.to_owned(),
            namespace,
            kind,
            object,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(event);
    }

    /// Events after `since`, or None when `since` is older than the history kept.
    pub fn events_since(&self, since: u64) -> Option<Vec<Arc<Event>>> {
        if since < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|e| e.rv > since)
                .cloned()
                .collect(),
        )
    }

    /// Drops the whole history: every resume from an older version gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}
