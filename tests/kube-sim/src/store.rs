//! Object storage with a global resourceVersion, a bounded event history for watch resumption,
//! and a broadcast of every change to live watchers. Each object is kept with its JSON
//! encoding, so a list of 10,000 objects is a concatenation rather than 10,000 encodings.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
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

/// A stored object and its JSON encoding (made once per write, reused by every list).
struct Entry {
    object: Arc<Value>,
    json: Bytes,
}

/// Where a watch or list asked to start, relative to what the store has.
#[derive(Debug)]
pub enum Since {
    /// The changes after the version, in order.
    Events(Vec<Arc<Event>>),
    /// Older than the history kept (or from before a restart that lost the store).
    TooOld,
    /// Newer than any version the store has handed out.
    TooLarge,
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Entry>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events at or below this version are no longer kept: watching from there gets 410.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self::starting_after(0, history_limit)
    }

    /// An empty store whose versions continue after `previous` (the last version of a store
    /// that was lost): every version a client still holds from before is then too old (410,
    /// so it relists) instead of naming some unrelated change of the new store.
    pub fn starting_after(previous: u64, history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self {
            rv: previous + 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted: previous + 1,
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
            .map(|e| e.object.clone())
    }

    /// Objects of a type, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, key: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.list_encoded(key, namespace)
            .map(|(object, _)| object.clone())
            .collect()
    }

    /// Like `list`, with each object's JSON encoding.
    pub fn list_encoded<'a>(
        &'a self,
        key: &str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Arc<Value>, &'a Bytes)> + 'a {
        self.entries(key, namespace, "")
            .map(|e| (&e.object, &e.json))
    }

    /// Entries of a type in one namespace (or all), whose names start with `prefix`, found by
    /// range rather than a scan.
    fn entries<'a>(
        &'a self,
        key: &str,
        namespace: Option<&'a str>,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let start = (namespace.unwrap_or_default().to_owned(), prefix.to_owned());
        self.objects
            .get(key)
            .into_iter()
            .flat_map(move |m| m.range(start.clone()..))
            .take_while(move |((n, name), _)| {
                namespace.is_none_or(|ns| n == ns) && name.starts_with(prefix)
            })
            .map(|(_, e)| e)
    }

    /// Objects of a type in one namespace whose names start with `prefix` (a Job's pods are
    /// named `<job>-…`).
    pub fn list_prefixed(&self, key: &str, namespace: &str, prefix: &str) -> Vec<Arc<Value>> {
        self.entries(key, Some(namespace), prefix)
            .map(|e| e.object.clone())
            .collect()
    }

    /// Every stored object with its type key.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Arc<Value>)> {
        self.objects
            .iter()
            .flat_map(|(key, m)| m.values().map(move |e| (key, &e.object)))
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
        let json = Bytes::from(serde_json::to_vec(&object).expect("values serialize"));
        let object = Arc::new(object);
        self.objects.entry(key.to_owned()).or_default().insert(
            (namespace.clone(), name),
            Entry {
                object: object.clone(),
                json,
            },
        );
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
        let mut last = (*removed.object).clone();
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

    /// The events after `since`, if the store can tell them. A version newer than the store's
    /// is refused rather than answered with nothing: a client holding one (from before a
    /// restart that lost the store) would otherwise wait for versions that mean nothing here.
    pub fn events_since(&self, since: u64) -> Since {
        if since > self.rv {
            return Since::TooLarge;
        }
        if since < self.compacted {
            return Since::TooOld;
        }
        Since::Events(
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
