//! The controllers' shared view of the store: typed objects by store key, fed by the watch and
//! by the controller's own writes.
//!
//! A controller that acts on a watch-fed cache can act twice on the same state: it creates
//! pods, reconciles again before the watch has delivered them, and creates them again
//! (upstream guards with "expectations"). Here each successful write is recorded at once with
//! the revision the store gave it, and an event is taken only if it is newer than what is held,
//! so a reconcile always sees its own writes and never a stale copy. A delete leaves a
//! tombstone with its revision for the same reason; tombstones go at the next full resync.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use sluice_store::{Event, EventType, Stored};

use crate::resources::Resource;

#[derive(Debug)]
struct Entry<T> {
    rev: u64,
    obj: Option<Arc<T>>,
}

/// Typed objects of one resource, by store key, each with the revision it was seen at.
#[derive(Debug)]
pub struct Cache<T> {
    res: &'static Resource,
    entries: BTreeMap<String, Entry<T>>,
}

impl<T: DeserializeOwned> Cache<T> {
    /// An empty cache of `res`.
    pub fn new(res: &'static Resource) -> Self {
        Cache {
            res,
            entries: BTreeMap::new(),
        }
    }

    /// The resource cached.
    pub fn resource(&self) -> &'static Resource {
        self.res
    }

    /// Whether a store key belongs to this cache's resource.
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.res.prefix())
    }

    /// Replaces everything with a full list (start-up and resync).
    pub fn reset(&mut self, items: &[Arc<Stored>]) {
        self.entries.clear();
        for s in items {
            self.record(s);
        }
    }

    /// Records a stored object (from a list, an event or our own write) unless what is held
    /// is newer. Returns whether the cache changed.
    pub fn record(&mut self, s: &Stored) -> bool {
        let obj = match serde_json::from_slice::<T>(&s.json) {
            Ok(o) => Some(Arc::new(o)),
            Err(e) => {
                tracing::warn!(key = %s.key, error = %e, "cached object does not decode");
                None
            }
        };
        self.put(&s.key, s.mod_revision, obj)
    }

    /// Records a deletion at `rev`.
    pub fn record_delete(&mut self, key: &str, rev: u64) -> bool {
        self.put(key, rev, None)
    }

    /// Takes a watch event; returns whether the cache changed.
    pub fn observe(&mut self, ev: &Event) -> bool {
        if !self.owns(&ev.object.key) {
            return false;
        }
        match ev.event_type {
            EventType::Deleted => self.record_delete(&ev.object.key, ev.object.mod_revision),
            _ => self.record(&ev.object),
        }
    }

    fn put(&mut self, key: &str, rev: u64, obj: Option<Arc<T>>) -> bool {
        match self.entries.get(key) {
            Some(e) if e.rev >= rev => false,
            _ => {
                self.entries.insert(key.to_string(), Entry { rev, obj });
                true
            }
        }
    }

    /// One object.
    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<T>> {
        self.entries
            .get(&self.res.key(ns, name))
            .and_then(|e| e.obj.clone())
    }

    /// The revision an object was seen at.
    pub fn revision(&self, ns: Option<&str>, name: &str) -> Option<u64> {
        self.entries
            .get(&self.res.key(ns, name))
            .filter(|e| e.obj.is_some())
            .map(|e| e.rev)
    }

    /// Every live object in a namespace (or all, for None), in key order.
    pub fn in_namespace(&self, ns: Option<&str>) -> impl Iterator<Item = &Arc<T>> {
        let prefix = self.res.ns_prefix(ns);
        self.entries
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, e)| e.obj.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use sluice_store::Stored;

    use super::*;
    use crate::resources::by_kind;

    fn stored(name: &str, rev: u64, v: Value) -> Stored {
        Stored {
            key: by_kind("Pod").key(Some("a"), name),
            json: v.to_string().into(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    #[test]
    fn older_copies_never_replace_newer_ones() {
        let mut c: Cache<Value> = Cache::new(by_kind("Pod"));
        assert!(c.record(&stored("p", 5, json!({"v": 5}))));
        assert!(!c.record(&stored("p", 4, json!({"v": 4}))), "a late event");
        assert_eq!(c.get(Some("a"), "p").unwrap()["v"], 5);
        assert!(c.record_delete(&by_kind("Pod").key(Some("a"), "p"), 6));
        assert!(
            !c.record(&stored("p", 5, json!({"v": 5}))),
            "the tombstone holds"
        );
        assert!(c.get(Some("a"), "p").is_none());
        assert!(c.record(&stored("p", 7, json!({"v": 7}))), "recreated");
        c.record(&stored("q", 8, json!({"v": 8})));
        let all: Vec<i64> = c
            .in_namespace(Some("a"))
            .map(|v| v["v"].as_i64().unwrap())
            .collect();
        assert_eq!(all, vec![7, 8]);
        assert_eq!(c.in_namespace(Some("b")).count(), 0);
    }
}
