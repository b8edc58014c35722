//! The in-memory index and watch fan-out that sit in front of a durable backend.
//!
//! Readers (`get`, `list`) are served from memory. Committed batches are applied under the
//! write lock and broadcast as `Arc<Event>`s, so every event is serialized once and shared by
//! all watchers. A watch takes its history snapshot and its broadcast subscription under the
//! same read lock, so no event can fall between the two.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use futures::stream::{self, StreamExt};
use tokio::sync::broadcast;

use crate::{Event, Revision, StoreError, Stored, WatchError, WatchStream};

pub(crate) struct Hub {
    state: RwLock<State>,
    /// The revision the index reflects, for callers waiting to read their own (or another
    /// API server's) writes.
    seen: tokio::sync::watch::Sender<Revision>,
    broadcast_cap: usize,
}

struct State {
    tx: broadcast::Sender<Arc<Event>>,
    objects: BTreeMap<String, Arc<Stored>>,
    revision: Revision,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// A watch may start after any revision ≥ this one: every later event is in `history`.
    compacted: Revision,
}

impl Hub {
    /// Builds the index from loaded state. `history` must be sorted by revision.
    pub(crate) fn new(
        objects: BTreeMap<String, Arc<Stored>>,
        revision: Revision,
        history: VecDeque<Arc<Event>>,
        history_cap: usize,
        broadcast_cap: usize,
    ) -> Self {
        let compacted = history
            .front()
            .map(|e| e.revision().saturating_sub(1))
            .unwrap_or(revision);
        Self::with_compacted(
            objects,
            revision,
            history,
            compacted,
            history_cap,
            broadcast_cap,
        )
    }

    /// [`Hub::new`] where the history is known to be complete after `compacted` (it may
    /// start later when no key under any prefix changed in between).
    pub(crate) fn with_compacted(
        objects: BTreeMap<String, Arc<Stored>>,
        revision: Revision,
        mut history: VecDeque<Arc<Event>>,
        mut compacted: Revision,
        history_cap: usize,
        broadcast_cap: usize,
    ) -> Self {
        while history.len() > history_cap.max(1) {
            if let Some(old) = history.pop_front() {
                compacted = old.revision();
            }
        }
        let (tx, _) = broadcast::channel(broadcast_cap.max(1));
        Hub {
            seen: tokio::sync::watch::Sender::new(revision),
            broadcast_cap: broadcast_cap.max(1),
            state: RwLock::new(State {
                tx,
                objects,
                revision,
                history,
                history_cap: history_cap.max(1),
                compacted,
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything with a fresh listing at `revision` (after the backend's history was
    /// lost, e.g. compacted while a store watch was down). Running watches end, and the
    /// history starts over, so a watcher resuming from an older revision is told to relist.
    pub(crate) fn reset(&self, objects: BTreeMap<String, Arc<Stored>>, revision: Revision) {
        let mut st = self.write();
        let (tx, _) = broadcast::channel(self.broadcast_cap);
        // Dropping the old sender ends every live watch stream.
        st.tx = tx;
        st.objects = objects;
        st.revision = revision;
        st.history.clear();
        st.compacted = revision;
        drop(st);
        self.seen.send_replace(revision);
    }

    /// Records that everything up to `revision` has been applied although no event carried it
    /// (a backend's progress notification).
    pub(crate) fn advance(&self, revision: Revision) {
        let mut st = self.write();
        if revision > st.revision {
            st.revision = revision;
            drop(st);
            self.seen.send_replace(revision);
        }
    }

    /// Waits until the index reflects `revision` or `timeout` passes; returns whether it does.
    pub(crate) async fn wait_for(&self, revision: Revision, timeout: std::time::Duration) -> bool {
        let mut rx = self.seen.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (apply is a sequence of
        // independent inserts), so a poisoned lock is still safe to read.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Stored>> {
        self.read().objects.get(key).cloned()
    }

    pub(crate) fn list(&self, prefix: &str) -> (Vec<Arc<Stored>>, Revision) {
        let st = self.read();
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision)
    }

    pub(crate) fn revision(&self) -> Revision {
        self.read().revision
    }

    /// Applies a committed batch (events in revision order) and broadcasts it.
    pub(crate) fn apply(&self, events: Vec<Arc<Event>>) {
        let mut st = self.write();
        for ev in events {
            let obj = &ev.object;
            match ev.event_type {
                crate::EventType::Deleted => {
                    st.objects.remove(&obj.key);
                }
                _ => {
                    st.objects.insert(obj.key.clone(), obj.clone());
                }
            }
            st.revision = st.revision.max(ev.revision());
            st.history.push_back(ev.clone());
            while st.history.len() > st.history_cap {
                if let Some(old) = st.history.pop_front() {
                    st.compacted = old.revision();
                }
            }
            // No receivers is fine; lagging receivers find out on their next recv.
            let _ = st.tx.send(ev);
        }
        let revision = st.revision;
        drop(st);
        self.seen.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }

    pub(crate) fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let st = self.read();
        if after < st.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: st.compacted,
            });
        }
        let past: Vec<Result<Arc<Event>, WatchError>> = st
            .history
            .iter()
            .filter(|e| e.revision() > after && e.object.key.starts_with(prefix))
            .cloned()
            .map(Ok)
            .collect();
        let rx = st.tx.subscribe();
        drop(st);

        let prefix = prefix.to_string();
        let live = stream::unfold(Some(rx), move |rx| {
            let prefix = prefix.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            if ev.revision() > after && ev.object.key.starts_with(&prefix) {
                                return Some((Ok(ev), Some(rx)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            return Some((Err(WatchError::Lagged(n)), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(stream::iter(past).chain(live).boxed())
    }
}
