//! Object storage with a global resourceVersion, a bounded event history for watch resumption,
//! and a broadcast of every change to live watchers. Each object is kept with its JSON
//! encoding, so a list of 10,000 objects is a concatenation rather than 10,000 encodings.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
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

/// Where an object is: its type key, namespace and name.
pub type Location = (String, String, String);

pub struct Store {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Entry>>,
    /// The garbage collector's indexes, kept with every write so a deletion looks at the
    /// objects it concerns instead of sweeping the store.
    owners: OwnerIndex,
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
        // A receiver that falls this far behind is told so (a watch closes and resumes from
        // the history): until then the channel holds every change it has not read.
        let (tx, _) = broadcast::channel(history_limit.clamp(1_024, 65_536));
        Self {
            rv: previous + 1,
            objects: BTreeMap::new(),
            owners: OwnerIndex::default(),
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

    /// Where the object with this uid is, if it exists.
    pub fn locate_uid(&self, uid: &str) -> Option<&Location> {
        self.owners.uids.get(uid)
    }

    /// Objects that name `uid` in their ownerReferences.
    pub fn dependents_of(&self, uid: &str) -> Vec<Location> {
        self.owners
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Owner uids that some object names, whether or not the owner exists.
    pub fn named_owners(&self) -> impl Iterator<Item = &String> {
        self.owners.dependents.keys()
    }

    /// Uids of objects held by the `foregroundDeletion` finalizer.
    pub fn foreground_uids(&self) -> &HashSet<String> {
        &self.owners.foreground
    }

    /// Stores `object` (its resourceVersion set to a new version) and tells watchers.
    pub fn put(&mut self, key: &str, mut object: Value, kind: EventType) -> Arc<Value> {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let (namespace, name) = namespaced_name(&object);
        let json = Bytes::from(serde_json::to_vec(&object).expect("values serialize"));
        let object = Arc::new(object);
        let location = (key.to_owned(), namespace.clone(), name.clone());
        let replaced = self.objects.entry(key.to_owned()).or_default().insert(
            (namespace.clone(), name),
            Entry {
                object: object.clone(),
                json,
            },
        );
        if let Some(replaced) = replaced {
            self.owners.forget(&location, &replaced.object);
        }
        self.owners.index(location, &object);
        self.record(key, namespace, kind, object.clone());
        object
    }

    /// Removes an object; watchers see it with a new resourceVersion.
    pub fn remove(&mut self, key: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let removed = self
            .objects
            .get_mut(key)
            .and_then(|m| m.remove(&(namespace.to_owned(), name.to_owned())))?;
        self.owners.forget(
            &(key.to_owned(), namespace.to_owned(), name.to_owned()),
            &removed.object,
        );
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

/// uid → object, owner uid → dependents, and the objects deleting in the foreground.
#[derive(Default)]
struct OwnerIndex {
    uids: HashMap<String, Location>,
    dependents: HashMap<String, BTreeSet<Location>>,
    foreground: HashSet<String>,
}

/// An object's namespace (empty when cluster-scoped) and name.
pub fn namespaced_name(object: &Value) -> (String, String) {
    let text = |field: &str| {
        object["metadata"][field]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (text("namespace"), text("name"))
}

fn uid_of(object: &Value) -> Option<&str> {
    object["metadata"]["uid"].as_str()
}

fn owner_uids_of(object: &Value) -> impl Iterator<Item = &str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

fn deleting_in_foreground(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"))
}

impl OwnerIndex {
    fn index(&mut self, location: Location, object: &Value) {
        for owner in owner_uids_of(object) {
            self.dependents
                .entry(owner.to_owned())
                .or_default()
                .insert(location.clone());
        }
        if let Some(uid) = uid_of(object) {
            if deleting_in_foreground(object) {
                self.foreground.insert(uid.to_owned());
            }
            self.uids.insert(uid.to_owned(), location);
        }
    }

    fn forget(&mut self, location: &Location, object: &Value) {
        for owner in owner_uids_of(object) {
            if let Some(dependents) = self.dependents.get_mut(owner) {
                dependents.remove(location);
                if dependents.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
        if let Some(uid) = uid_of(object) {
            self.foreground.remove(uid);
            if self.uids.get(uid) == Some(location) {
                self.uids.remove(uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, uid: &str, owners: &[&str], finalizers: &[&str]) -> Value {
        let refs: Vec<Value> = owners.iter().map(|u| json!({"uid": u})).collect();
        json!({"metadata": {"namespace": "ns", "name": name, "uid": uid, "ownerReferences": refs, "finalizers": finalizers}})
    }

    fn at(name: &str) -> Location {
        ("configmaps".into(), "ns".into(), name.into())
    }

    #[test]
    fn owner_index_follows_every_write() {
        let mut store = Store::new(10);
        store.put(
            "configmaps",
            object("owner", "u1", &[], &[]),
            EventType::Added,
        );
        store.put(
            "configmaps",
            object("dep", "u2", &["u1"], &[]),
            EventType::Added,
        );
        assert_eq!(store.locate_uid("u1"), Some(&at("owner")));
        assert_eq!(store.dependents_of("u1"), vec![at("dep")]);

        // Rewritten without the reference: no longer a dependent.
        store.put(
            "configmaps",
            object("dep", "u2", &[], &[]),
            EventType::Modified,
        );
        assert!(store.dependents_of("u1").is_empty());
        assert_eq!(store.named_owners().count(), 0);

        store.put(
            "configmaps",
            object("owner", "u1", &[], &["foregroundDeletion"]),
            EventType::Modified,
        );
        assert!(store.foreground_uids().contains("u1"));

        // Same name, new object: the old uid is gone, the new one is there.
        store.remove("configmaps", "ns", "owner");
        assert!(store.foreground_uids().is_empty());
        assert_eq!(store.locate_uid("u1"), None);
        store.put(
            "configmaps",
            object("owner", "u3", &[], &[]),
            EventType::Added,
        );
        assert_eq!(store.locate_uid("u3"), Some(&at("owner")));
        assert_eq!(store.locate_uid("u1"), None);
    }
}
