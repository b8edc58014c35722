//! A node cache driven by kube-rs watcher events. The initial list is buffered and swapped in
//! at `InitDone`, so a relist never exposes a half-filled cache (which would delete routes to
//! nodes not yet re-listed).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;

/// Nodes by name.
#[derive(Debug, Default)]
pub struct NodeCache {
    nodes: BTreeMap<String, Node>,
    pending: Option<BTreeMap<String, Node>>,
    synced: bool,
}

impl NodeCache {
    /// Applies one event. Returns true when the visible set changed (or was first synced).
    pub fn apply(&mut self, ev: Event<Node>) -> bool {
        match ev {
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            Event::InitApply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, n);
                false
            }
            Event::InitDone => {
                self.nodes = self.pending.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name, n);
                self.synced
            }
            Event::Delete(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.remove(&name).is_some() && self.synced
            }
        }
    }

    /// True once a complete list has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The cached nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// One node.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    fn names(c: &NodeCache) -> Vec<String> {
        c.nodes()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn swaps_at_init_done_and_tracks_changes() {
        let mut c = NodeCache::default();
        assert!(!c.apply(Event::Init));
        assert!(!c.apply(Event::InitApply(n("a"))));
        assert!(!c.synced());
        assert!(c.apply(Event::InitDone));
        assert_eq!(names(&c), ["a"]);
        assert!(c.apply(Event::Apply(n("b"))));
        assert!(c.apply(Event::Delete(n("a"))));
        assert!(!c.apply(Event::Delete(n("a"))));
        assert_eq!(names(&c), ["b"]);
        // A relist keeps the old view until it is complete, then replaces it.
        c.apply(Event::Init);
        c.apply(Event::InitApply(n("c")));
        assert_eq!(names(&c), ["b"]);
        assert!(c.apply(Event::InitDone));
        assert_eq!(names(&c), ["c"]);
        assert!(c.get("c").is_some());
    }
}
