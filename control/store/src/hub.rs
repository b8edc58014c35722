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
    tx: broadcast::Sender<Arc<Event>>,
}

struct State {
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
        let (tx, _) = broadcast::channel(broadcast_cap.max(1));
        Hub {
            state: RwLock::new(State {
                objects,
                revision,
                history,
                history_cap: history_cap.max(1),
                compacted,
            }),
            tx,
        }
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
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
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
            let _ = self.tx.send(ev);
        }
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
        let rx = self.tx.subscribe();
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
